"""V: the ConvVAE of World Models (Ha & Schmidhuber 2018), 64x64x3 frames <-> z.

Encoder: 4 convs (4x4, stride 2; 32-64-128-256 channels, ReLU) -> 256*2*2 = 1024 -> mu, log sigma.
Decoder: z -> 1024 -> (1024, 1, 1) -> 4 transposed convs (5, 5, 6, 6 kernels, stride 2) -> sigmoid.

Loss of a batch of B frames (the released code's, per sample then averaged):

    recon = mean_b  sum_{c,h,w} (x - x_hat)^2
    kl    = mean_b  max( KL(q(z|x_b) || N(0, I)),  kl_tolerance * z_dim )
    loss  = recon + kl
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

FRAME_SHAPE = (64, 64, 3)
FLAT = 256 * 2 * 2  # encoder output: 64 -> 31 -> 14 -> 6 -> 2 pixels per side, 256 channels


def frames_to_tensor(frames: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 frames (B, 64, 64, 3) -> float (B, 3, 64, 64) in [0, 1].

    The result is contiguous in the default (NCHW) layout, or in ``torch.channels_last`` when
    asked (faster convolutions on some GPUs); either way it has the logical shape (B, 3, 64, 64).
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or tuple(frames.shape[1:]) != FRAME_SHAPE:
        raise ValueError(f"expected uint8 frames of shape (B, 64, 64, 3), got {frames.dtype} {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class ConvVAE(nn.Module):
    """V: frames (B, 3, 64, 64) in [0, 1] <-> latents z (B, z_dim)."""

    def __init__(self, z_dim: int = 32) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2), nn.ReLU(),
            nn.Conv2d(128, 256, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(FLAT, z_dim)
        self.fc_log_sigma = nn.Linear(FLAT, z_dim)
        self.fc_decode = nn.Linear(z_dim, FLAT)
        # (B, 1024, 1, 1) -> 5 -> 13 -> 30 -> 64 pixels per side
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(FLAT, 128, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 6, stride=2), nn.Sigmoid(),
        )

    @property
    def config(self) -> dict:
        """The constructor arguments, for the checkpoint's JSON."""
        return {"z_dim": self.z_dim}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, 64, 64) in [0, 1] -> (mu, log_sigma), each (B, z_dim)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_log_sigma(h)

    def posterior(self, x: torch.Tensor) -> Independent:
        """q(z | x) for x (B, 3, 64, 64): batch shape (B,), event shape (z_dim,)."""
        return _diagonal_normal(*self.encode(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim) -> reconstruction (B, 3, 64, 64) in [0, 1]."""
        return self.decoder(self.fc_decode(z)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, 64, 64) -> (recon (B, 3, 64, 64), mu (B, z), log_sigma (B, z)); z is an rsample of q(z|x)."""
        mu, log_sigma = self.encode(x)
        return self.decode(_diagonal_normal(mu, log_sigma).rsample()), mu, log_sigma

    def loss(self, x: torch.Tensor, kl_tolerance: float = 0.5, recon_cutoff: float = 0.0,
             background: torch.Tensor | None = None, foreground_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """The VAE loss of a batch x (B, 3, 64, 64) and its terms (all scalars).

        Keys: loss = recon + kl; recon; kl (after the per-sample floor ``kl_tolerance * z_dim``,
        which stops the optimiser squeezing information out of z once KL is small; 0 disables it);
        mean_mu and mean_sigma of q(z|x) over batch and dims (detached; a healthy fit keeps them
        near 0 and 1 across the data).

        ``recon_cutoff`` > 0 trains on SimPLe's clipped per-pixel loss, max(0, e - cutoff) with e a
        pixel's squared error summed over channels (``recon_clipped``; ``recon`` stays the plain
        one, comparable across settings): the many small errors of a background no longer outweigh
        the few large ones of a small object (Pong's ball is ~2 of 4,096 pixels).

        ``foreground_weight`` > 1 with a ``background`` frame (3, 64, 64) multiplies the error of
        every pixel that differs from the background (``foreground_mask``) by that weight
        (``recon_weighted``): small objects count more while the background keeps its full loss.
        """
        mu, log_sigma = self.encode(x)
        q = _diagonal_normal(mu, log_sigma)
        prior = _diagonal_normal(torch.zeros_like(mu), torch.zeros_like(log_sigma))
        error = (self.decode(q.rsample()) - x).pow(2)
        recon = error.sum(dim=(1, 2, 3)).mean()
        kl = kl_divergence(q, prior).clamp(min=kl_tolerance * self.z_dim).mean()
        terms = {"recon": recon}
        if recon_cutoff > 0:
            terms["recon_clipped"] = (error.sum(dim=1) - recon_cutoff).clamp(min=0).sum(dim=(1, 2)).mean()
        if background is not None and foreground_weight != 1.0:
            weight = 1.0 + (foreground_weight - 1.0) * foreground_mask(x, background)
            terms["recon_weighted"] = (error.sum(dim=1) * weight).sum(dim=(1, 2)).mean()
        trained_on = terms.get("recon_weighted", terms.get("recon_clipped", recon))
        return {
            "loss": trained_on + kl,
            **terms,
            "kl": kl,
            "mean_mu": mu.detach().mean(),
            "mean_sigma": log_sigma.detach().exp().mean(),
        }


def _diagonal_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> Independent:
    """N(mu, diag(sigma^2)) with the last dim as the event: KL and log_prob sum over it.

    No argument validation: a diverging run must show up as a NaN loss, which the training loop
    reports with advice, not as a ValueError from deep inside torch.distributions.
    """
    return Independent(Normal(mu, log_sigma.exp(), validate_args=False), 1, validate_args=False)


def foreground_mask(x: torch.Tensor, background: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """(B, 64, 64) float, 1 where a pixel of x (B, 3, 64, 64) differs from the background frame
    (3, 64, 64) by more than ``threshold`` in any channel: the objects on a fixed screen."""
    return ((x - background).abs().amax(dim=1) > threshold).to(x.dtype)


def background_frame(frames: torch.Tensor) -> torch.Tensor:
    """The per-pixel median (3, 64, 64) of frames (N, 3, 64, 64): what a fixed screen shows when
    its moving objects are elsewhere (Atari's playfields; not meaningful for a moving camera)."""
    return frames.median(dim=0).values


def moving_pixel_error(frames: torch.Tensor, decoded: torch.Tensor, threshold: float = 0.1) -> dict[str, float]:
    """V's squared error on the pixels that move, beside the rest: does V keep the small objects?

    ``frames`` (T, 3, 64, 64) are consecutive real frames in [0, 1], ``decoded`` V's
    reconstructions of them. A pixel of frame t moves when any channel changed by more than
    ``threshold`` since frame t-1 (a ball, a paddle, a fireball; Pong's ball is ~2 of 4,096
    pixels, which an L2 loss over the whole frame can drop at almost no cost). Returns the mean
    squared error per pixel on moving and on static pixels, and the moving pixels' share."""
    moved = (frames[1:] - frames[:-1]).abs().amax(dim=1) > threshold  # (T-1, 64, 64)
    error = (decoded[1:] - frames[1:]).pow(2).sum(dim=1)  # (T-1, 64, 64), summed over channels
    count = int(moved.sum())
    return {"moving_mse": float(error[moved].mean()) if count else float("nan"),
            "static_mse": float(error[~moved].mean()),
            "moving_fraction": count / moved.numel()}
