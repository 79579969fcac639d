"""What a run shows people: the predict HTML report and the end-of-run terminal tables."""
