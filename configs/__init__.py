"""The methods' config files: `--config=configs/<method>.py[:preset]`, or `--config=<method>`."""
