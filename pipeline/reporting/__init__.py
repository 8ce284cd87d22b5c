"""Figures and tables the stages write under reports/ (train loss curves, evaluate pictures)."""
