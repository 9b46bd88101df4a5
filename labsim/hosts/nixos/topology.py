"""The NixOS hosts of the lab's topologies: the default three guests, and generated ones."""

from __future__ import annotations

from labsim.hosts.nixos.model import NixosSpec

# --- topologies -------------------------------------------------------------------------------


def default_specs() -> list[NixosSpec]:
    """``dns`` (guest 100, the canary), ``media`` (101) and ``builder`` (102, whose flake
    has a ``disko`` input with a nixpkgs of its own: its lock calls the system's
    ``nixpkgs_2``)."""
    return [
        NixosSpec(
            "dns",
            vmid=100,
            build_seconds=4.0,
            services={"unbound.service": "Unbound recursive Domain Name Server"},
            canary=True,
        ),
        NixosSpec(
            "media",
            vmid=101,
            build_seconds=8.0,
            services={"jellyfin.service": "Jellyfin Media Server"},
            after=("dns",),
        ),
        NixosSpec(
            "builder",
            vmid=102,
            build_seconds=12.0,
            services={"nix-serve.service": "nix-serve binary cache server"},
            after=("dns",),
            side_input="disko",
        ),
    ]


def generated_specs(count: int) -> list[NixosSpec]:
    """``nixos-01`` ... for benchmarks: machines of their own, builds of 1 to 4 s."""
    return [
        NixosSpec(
            f"nixos-{i:02d}",
            build_seconds=float(1 + (i % 4)),
            services={"nginx.service": "Nginx Web Server"},
            canary=i == 1,
        )
        for i in range(1, count + 1)
    ]
