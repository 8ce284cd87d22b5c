"""`python -m pipeline.download`: stage `download`, implemented in `pipeline.stages.download`."""

from pipeline.stages.download import main

if __name__ == "__main__":
    main()
