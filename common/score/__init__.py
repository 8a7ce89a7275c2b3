"""The challenge's score in Jittor: metric networks, preprocessing and the metrics (docs/score.md)."""
