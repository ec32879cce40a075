"""V (ConvVAE): shapes, the exact loss terms, the frame conversion, and that it can learn."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from world_models.vae import ConvVAE, frames_to_tensor

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


def _model(z_dim: int, seed: int = 0) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(z_dim)


@pytest.mark.parametrize("z_dim", [32, 64])
def test_shapes_of_encode_decode_forward_posterior(z_dim):
    model = _model(z_dim)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        mu, log_sigma = model.encode(x)
        assert mu.shape == log_sigma.shape == (3, z_dim)
        x_hat = model.decode(torch.randn(5, z_dim))
        assert x_hat.shape == (5, 3, 64, 64)
        assert x_hat.min() >= 0 and x_hat.max() <= 1
        recon, mu2, log_sigma2 = model(x)
        assert recon.shape == x.shape
        torch.testing.assert_close(mu2, mu)
        torch.testing.assert_close(log_sigma2, log_sigma)
        q = model.posterior(x)
        assert q.batch_shape == (3,) and q.event_shape == (z_dim,)
        torch.testing.assert_close(q.mean, mu)
        torch.testing.assert_close(q.stddev, log_sigma.exp())
        assert q.sample().shape == (3, z_dim)
    assert model.config == {"z_dim": z_dim}


def test_forward_samples_z_from_the_posterior():
    """forward decodes z ~ q(z|x) (not mu): two calls differ, and the decoded z is mu + sigma * eps."""
    model = _model(32)
    x = torch.rand(2, 3, 64, 64)
    seen = []
    decode = model.decode
    model.decode = lambda z: seen.append(z) or decode(z)
    with torch.no_grad():
        first, mu, log_sigma = model(x)
        second, _, _ = model(x)
    assert not torch.equal(first, second)
    eps = (seen[0] - mu) / log_sigma.exp()
    assert eps.abs().max() < 8 and eps.std() > 0.3
    torch.testing.assert_close(first, decode(seen[0]))


def _closed_form_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    sigma = log_sigma.exp()
    return 0.5 * (mu**2 + sigma**2 - 1 - 2 * log_sigma).sum(-1)


@pytest.mark.parametrize("z_dim", [32, 64])
def test_kl_matches_closed_form_and_torch_distributions(z_dim):
    model = _model(z_dim, seed=1)
    # Push the encoder away from N(0, I) so the KL is large and sample-dependent.
    with torch.no_grad():
        model.fc_mu.bias.normal_(0.0, 1.0)
        model.fc_log_sigma.bias.uniform_(-1.5, 0.5)
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        mu, log_sigma = model.encode(x)
        per_sample = _closed_form_kl(mu, log_sigma)
        prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
        torch.testing.assert_close(kl_divergence(model.posterior(x), prior), per_sample, rtol=1e-5, atol=1e-4)
        terms = model.loss(x, kl_tolerance=0.0)
    assert per_sample.min() > 1.0  # a meaningful, non-trivial KL
    torch.testing.assert_close(terms["kl"], per_sample.mean(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["loss"], terms["recon"] + terms["kl"])
    torch.testing.assert_close(terms["mean_mu"], mu.mean())
    torch.testing.assert_close(terms["mean_sigma"], log_sigma.exp().mean())


def test_kl_tolerance_floor_is_per_sample():
    z_dim = 32
    model = _model(z_dim)
    x = torch.rand(2, 3, 64, 64)
    # Sample 0 is exactly the prior (KL 0), sample 1 is far from it (KL 0.5 * 4 * 32 = 64).
    mu = torch.stack([torch.zeros(z_dim), torch.full((z_dim,), 2.0)])
    log_sigma = torch.zeros(2, z_dim)
    model.encode = lambda _x: (mu, log_sigma)
    kl = _closed_form_kl(mu, log_sigma)
    torch.testing.assert_close(kl, torch.tensor([0.0, 64.0]))
    with torch.no_grad():
        for tolerance in (0.0, 0.5, 1.0, 3.0):
            floor = tolerance * z_dim
            got = model.loss(x, kl_tolerance=tolerance)["kl"]
            expected = kl.clamp(min=floor).mean()  # per sample, then the batch mean
            torch.testing.assert_close(got, expected)
    # 0.5 * 32 = 16: per sample (16 + 64) / 2 = 40, whereas a floor on the batch mean would give 32.
    assert model.loss(x, kl_tolerance=0.5)["kl"].item() == pytest.approx(40.0)


def test_reconstruction_is_pixel_summed_squared_error_averaged_over_batch():
    model = _model(32, seed=2)
    x = torch.rand(3, 3, 64, 64)
    # sigma = exp(-30): the sampled z is mu, so the reconstruction term is deterministic.
    with torch.no_grad():
        model.fc_log_sigma.weight.zero_()
        model.fc_log_sigma.bias.fill_(-30.0)
        mu, _ = model.encode(x)
        x_hat = model.decode(mu)
        per_sample = torch.stack([((x_hat[b] - x[b]) ** 2).sum() for b in range(3)])
        terms = model.loss(x, kl_tolerance=0.0)
    assert per_sample.min() > 10  # summed over 12288 pixels, not averaged
    torch.testing.assert_close(terms["recon"], per_sample.mean(), rtol=1e-5, atol=1e-3)


def test_reconstruction_uses_a_posterior_sample():
    model = _model(32, seed=3)
    x = torch.rand(4, 3, 64, 64)
    seen = []
    decode = model.decode
    model.decode = lambda z: seen.append(z) or decode(z)
    with torch.no_grad():
        terms = model.loss(x, kl_tolerance=0.0)
        mu, log_sigma = model.encode(x)
    (z,) = seen
    assert not torch.allclose(z, mu)
    expected = ((decode(z) - x) ** 2).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(terms["recon"], expected, rtol=1e-5, atol=1e-3)
    eps = (z - mu) / log_sigma.exp()
    assert abs(eps.mean().item()) < 0.3 and 0.7 < eps.std().item() < 1.3


def test_frames_to_tensor_layout_range_and_channel_order():
    frames = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    frames[0, :, :, 0] = 255  # frame 0 pure red
    frames[1, 10, 20, 2] = 128  # one blue-ish pixel at row 10, column 20
    frames[1, 5, 7, 1] = 51
    original = frames.clone()
    x = frames_to_tensor(frames)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.all(x[0, 0] == 1.0) and torch.all(x[0, 1:] == 0.0)
    assert x[1, 2, 10, 20].item() == pytest.approx(128 / 255)
    assert x[1, 1, 5, 7].item() == pytest.approx(0.2)
    assert x[1].sum().item() == pytest.approx(128 / 255 + 0.2)
    random = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(frames_to_tensor(random), random.permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(frames, original)  # the input is not modified


def _rectangles(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, 64, 64)
    for i in range(n):
        for _ in range(2):
            colour = torch.rand(3, generator=g)
            top, left = torch.randint(0, 48, (2,), generator=g).tolist()
            height, width = torch.randint(8, 24, (2,), generator=g).tolist()
            x[i, :, top : top + height, left : left + width] = colour[:, None, None]
    return x


def test_every_parameter_gets_a_gradient():
    model = _model(32, seed=4)
    x = _rectangles(4)
    model.loss(x, kl_tolerance=0.0)["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_training_on_coloured_rectangles_reduces_the_loss():
    # A few hundred steps do not fit in 15 s here: one step of the full-size ConvVAE on 16 frames
    # takes ~0.25 s on one shared core. By step 25 the loss has fallen ~7x (2829 -> ~380); note that
    # ~378 is the all-black output (these frames are mostly black), where lr 1e-3 stays for good.
    torch.manual_seed(0)
    model = ConvVAE(32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = _rectangles(16)
    losses = []
    for _ in range(25):
        terms = model.loss(x)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] / 5, losses
    assert max(losses[-3:]) < 600, losses


def test_moving_pixel_error_sees_a_dropped_ball_that_the_frame_average_hides():
    from world_models.vae import moving_pixel_error

    frames = torch.full((5, 3, 64, 64), 0.3)
    for t in range(5):  # a 2x2 white ball moving right on a grey screen
        frames[t, :, 30:32, 10 + 4 * t : 12 + 4 * t] = 1.0
    background = torch.full_like(frames, 0.3)  # a V that dropped the ball
    dropped = moving_pixel_error(frames, background)
    assert dropped["static_mse"] == 0 and dropped["moving_mse"] > 0.2
    assert 0 < dropped["moving_fraction"] < 0.01
    whole_frame = float((background - frames).pow(2).sum(dim=1).mean())
    assert whole_frame < dropped["moving_mse"] / 100  # the frame-wide error barely notices
    kept = moving_pixel_error(frames, frames)
    assert kept["moving_mse"] == kept["static_mse"] == 0


def test_the_clipped_loss_ignores_errors_under_the_cutoff_and_leaves_the_plain_loss_alone():
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=8)
    x = torch.rand(4, 3, 64, 64)
    torch.manual_seed(1)
    plain = vae.loss(x)
    torch.manual_seed(1)
    off = vae.loss(x, recon_cutoff=0.0)
    assert "recon_clipped" not in off and torch.equal(off["loss"], plain["loss"])  # 0: bit-identical
    torch.manual_seed(1)
    clipped = vae.loss(x, recon_cutoff=3.0)  # a pixel's error summed over 3 channels is at most 3
    assert float(clipped["recon_clipped"]) == 0 and torch.equal(clipped["loss"], clipped["kl"])
    assert torch.equal(clipped["recon"], plain["recon"])  # the plain figure is still reported
    torch.manual_seed(1)
    some = vae.loss(x, recon_cutoff=0.1)
    assert 0 < float(some["recon_clipped"]) < float(some["recon"])


def test_the_foreground_weight_multiplies_only_the_error_of_pixels_off_the_background():
    from world_models.vae import background_frame, foreground_mask

    frames = torch.full((9, 3, 64, 64), 0.3)
    for t in range(9):  # a 2x2 ball moving over a grey screen: the median frame is the screen alone
        frames[t, :, 30:32, 4 * t : 4 * t + 2] = 1.0
    background = background_frame(frames)
    assert torch.equal(background, torch.full((3, 64, 64), 0.3))
    mask = foreground_mask(frames, background)
    assert mask.sum(dim=(1, 2)).tolist() == [4.0] * 9  # the ball's 4 pixels, every frame
    torch.manual_seed(0)
    vae = ConvVAE(z_dim=8)
    torch.manual_seed(1)
    plain = vae.loss(frames)
    torch.manual_seed(1)
    off = vae.loss(frames, background=background, foreground_weight=1.0)
    assert "recon_weighted" not in off and torch.equal(off["loss"], plain["loss"])  # 1: bit-identical
    torch.manual_seed(1)
    weighted = vae.loss(frames, background=background, foreground_weight=5.0)
    torch.manual_seed(1)
    decoded = vae.decode(vae.posterior(frames).rsample())
    error = (decoded - frames).pow(2).sum(dim=1)
    expected = (error.sum(dim=(1, 2)) + 4.0 * (error * mask).sum(dim=(1, 2))).mean()
    assert torch.allclose(weighted["recon_weighted"], expected) and torch.equal(weighted["recon"], plain["recon"])
