"""Where a network looks: class activation maps (cam.py), their overlays and pictures."""
