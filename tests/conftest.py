"""Shared test setup: the repository root on sys.path, a small CPU thread budget."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(2)
