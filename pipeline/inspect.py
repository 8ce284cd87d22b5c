"""`python -m pipeline.inspect`: stage `inspect`, implemented in `pipeline.stages.inspect`."""

from pipeline.stages.inspect import main

if __name__ == "__main__":
    main()
