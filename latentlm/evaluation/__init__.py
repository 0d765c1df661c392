"""Evaluation: prompt adherence, codec reconstruction, and the scene parser behind them."""
