"""`python -m pipeline.shards`: stage `shards`, implemented in `pipeline.stages.shards`."""

from pipeline.stages.shards import main

if __name__ == "__main__":
    main()
