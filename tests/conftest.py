import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
