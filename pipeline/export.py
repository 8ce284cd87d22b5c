"""`python -m pipeline.export`: stage `export`, implemented in `pipeline.stages.export`."""

from pipeline.stages.export import main

if __name__ == "__main__":
    main()
