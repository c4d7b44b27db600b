"""The sending engine: leasing, batches, rates, the pause barrier, schedules, sweeps, progress."""
