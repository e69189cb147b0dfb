"""Long-running jobs behind `handheld spinquant` and `handheld qat`: typed options in, a checkpoint out."""
