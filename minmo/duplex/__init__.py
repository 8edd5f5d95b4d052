"""Full-duplex turn-taking: labels from speaker turns (MinMo's heuristics) and their evaluation."""
