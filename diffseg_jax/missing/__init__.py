"""Missing MRI sequences: synthesising them (M2DN) — validation scores and the volume-level evaluation."""
