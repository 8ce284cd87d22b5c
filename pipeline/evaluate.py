"""`python -m pipeline.evaluate`: stage `evaluate`, implemented in `pipeline.stages.evaluate`."""

from pipeline.stages.evaluate import main

if __name__ == "__main__":
    main()
