"""`python -m pipeline.train`: stage `train`, implemented in `pipeline.stages.train`."""

from pipeline.stages.train import main

if __name__ == "__main__":
    main()
