"""`python -m pipeline.tune`: the Ray Tune sweep (not a DVC stage), in `pipeline.sweep.entry`."""

from pipeline.sweep.entry import main

if __name__ == "__main__":
    main()
