"""Evaluating trained MinMo checkpoints: metrics (`metrics`, `normalize`) and `minmo eval`."""
