"""What an experiment is made of: data, models, losses, optimizers and schedules, test functions."""
