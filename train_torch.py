"""The original's entry point: `python train_torch.py --gpus 1 --train --max_epochs 2`, `--chat`.

Every flag of `python -m kogpt2_chatbot train` works here too (see --help).
"""
import sys

from kogpt2_chatbot.__main__ import legacy_main

if __name__ == "__main__":
    sys.exit(legacy_main())
