"""V: the ConvVAE of World Models (Ha & Schmidhuber 2018), 64x64x3 frames <-> z.

Encoder: 4 convs (4x4, stride 2; 32-64-128-256 channels, ReLU) -> (256*2*2) -> mu, log sigma.
Decoder: z -> 1024 -> 4 transposed convs (5, 5, 6, 6 kernels, stride 2) -> sigmoid.
Loss:    ||x - x_hat||^2 summed over pixels + max(KL(q(z|x) || N(0, I)), kl_tolerance * z_dim).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence


def frames_to_tensor(frames: torch.Tensor) -> torch.Tensor:
    """(B, 64, 64, 3) uint8 -> (B, 3, 64, 64) float in [0, 1] (channels_last memory, no copy of layout)."""
    return frames.permute(0, 3, 1, 2).float().div_(255.0)


class ConvVAE(nn.Module):
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
        self.fc_mu = nn.Linear(1024, z_dim)
        self.fc_log_sigma = nn.Linear(1024, z_dim)
        self.fc_decode = nn.Linear(z_dim, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 6, stride=2), nn.Sigmoid(),
        )

    @property
    def config(self) -> dict:
        return {"z_dim": self.z_dim}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, 64, 64) in [0, 1] -> mu, log_sigma, each (B, z)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_log_sigma(h)

    def posterior(self, x: torch.Tensor) -> Independent:
        """q(z | x) as a distribution with event shape (z,)."""
        mu, log_sigma = self.encode(x)
        return Independent(Normal(mu, log_sigma.exp()), 1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, z) -> reconstruction (B, 3, 64, 64) in [0, 1]."""
        return self.decoder(self.fc_decode(z)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.encode(x)
        z = Normal(mu, log_sigma.exp()).rsample()
        return self.decode(z), mu, log_sigma

    def loss(self, x: torch.Tensor, kl_tolerance: float = 0.5) -> dict[str, torch.Tensor]:
        """The VAE loss of a batch, its terms, and the mean mu and sigma of q(z|x)."""
        mu, log_sigma = self.encode(x)
        q = Independent(Normal(mu, log_sigma.exp()), 1)
        prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
        recon = (self.decode(q.rsample()) - x).pow(2).sum(dim=(1, 2, 3)).mean()
        kl = kl_divergence(q, prior).clamp(min=kl_tolerance * self.z_dim).mean()
        return {
            "loss": recon + kl,
            "recon": recon.detach(),
            "kl": kl.detach(),
            "mean_mu": mu.detach().mean(),
            "mean_sigma": log_sigma.detach().exp().mean(),
        }
