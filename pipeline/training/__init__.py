"""Data-parallel training with Ray Train: the driver (`driver.fit`), the loop every worker
runs (`loop.train_loop`), the checkpoint / resume protocol (`checkpoints`), Ray start-up
(`runtime`) and the periodic validation (`periodic_eval`)."""
