"""PyTorch EDM timed beside pdr_jax: the worker process of `pdr-bench --torch-python`.

    python -m pdr_jax.evaluation.torch_worker SPEC_JSON

run by `pdr_jax.cli.bench.TorchBench` under a Python that has torch (not necessarily jax).
SPEC_JSON gives the network, batch, optimiser and sampler of the JAX side, and `edm_path`,
the folders to import NVlabs/edm's `training.networks` from. The worker prints one JSON line
(torch's version and threads), then answers each stdin line {"what": "forward" | "heun" |
"train", "repeats": n} with {"times": [seconds...], "maxrss_kb": peak RSS}.

Nothing in pdr_jax imports this module (torch is optional); it imports only torch, EDM's code
and the standard library, so the package's other modules need not import there.
"""

import json
import resource
import sys
import time


def make_parts(spec: dict) -> dict:
    """{"forward", "heun", "train"}: callables that run one batch of EDM's DDPM++ in torch."""
    import torch

    sys.path[:0] = spec["edm_path"]
    from training.networks import EDMPrecond

    torch.manual_seed(0)
    res, batch, channels = spec["resolution"], spec["batch"], spec["img_channels"]
    label_dim = spec["label_dim"]

    def make():
        return EDMPrecond(
            img_resolution=res,
            img_channels=channels,
            label_dim=label_dim,
            model_type="SongUNet",
            **spec["unet"],
        )

    net, ema = make().train().requires_grad_(True), make().eval().requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=spec["lr"], betas=spec["betas"], eps=spec["eps"])
    images = torch.rand(batch, channels, res, res) * 2 - 1
    labels = torch.rand(batch, label_dim)
    P_mean, P_std, sigma_data = spec["P_mean"], spec["P_std"], spec["sigma_data"]

    def train():
        # EDM's EDMLoss, Adam and EMA (training/loss.py, training_loop.py); clipping as
        # pdr_jax's config.
        sigma = (torch.randn(batch, 1, 1, 1) * P_std + P_mean).exp()
        weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        D = net(images + torch.randn_like(images) * sigma, sigma, labels)
        loss = (weight * (D - images) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), spec["grad_clip"])
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.copy_(p.detach().lerp(p_ema, 0.999))

    @torch.no_grad()
    def forward():
        ema(images, torch.ones(batch), labels)

    @torch.no_grad()
    def heun(sigma_min=0.002, sigma_max=80.0, rho=7.0):
        # EDM's Heun sampler without churn (Karras et al. 2022, Algorithm 2), float64 as in
        # generate.py.
        n = spec["num_steps"]
        ramp = torch.arange(n, dtype=torch.float64) / (n - 1)
        t = (
            sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
        ) ** rho
        t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
        x = torch.randn(batch, channels, res, res, dtype=torch.float64) * t[0]
        for k in range(n):
            # Euler step.
            d = (x - ema(x, t[k].expand(batch), labels).to(torch.float64)) / t[k]
            x_next = x + (t[k + 1] - t[k]) * d
            # 2nd-order correction, except on the last step.
            if k < n - 1:
                denoised = ema(x_next, t[k + 1].expand(batch), labels).to(torch.float64)
                d_prime = (x_next - denoised) / t[k + 1]
                x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d_prime)
            x = x_next

    return {"forward": forward, "heun": heun, "train": train}


def main(argv=None) -> None:
    import torch

    argv = sys.argv[1:] if argv is None else argv
    parts = make_parts(json.loads(argv[0]))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        times = []
        for _ in range(command["repeats"]):
            start = time.perf_counter()
            parts[command["what"]]()
            times.append(time.perf_counter() - start)
        maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"times": times, "maxrss_kb": maxrss_kb}), flush=True)


if __name__ == "__main__":
    main()
