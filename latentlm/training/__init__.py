"""Training: the one accelerate loop and the tasks it trains."""
