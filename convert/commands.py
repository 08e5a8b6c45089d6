"""Workstation commands for conversion and bundles: `convert`, `keys new`, `bundle verify|show`.

Registered on the main app by ``register``; heavy imports (TensorFlow, cryptography) stay inside commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the conversion and bundle commands to the main ``vibrawatch`` app."""
    from .cli_errors import user_errors

    keys_app = typer.Typer(help="Signing keys for model bundles.", no_args_is_help=True)
    bundle_app = typer.Typer(help="Inspect and verify model bundles.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")
    app.add_typer(bundle_app, name="bundle")

    @app.command()
    @user_errors
    def convert(
        run_dir: Annotated[Path, typer.Argument(help="A run directory made by `vibrawatch train`.")],
        out: Annotated[Path, typer.Option("--out", help="Bundle to write: a directory, or a single file ending .tar.")],
        quantize: Annotated[
            str, typer.Option(help="none (float32), dynamic (int8 weights), float16, or int8 (calibrated on the "
                              "healthy training windows).")
        ] = "none",
        sign_key: Annotated[
            Path | None, typer.Option("--sign-key", help="Private key from `vibrawatch keys new` to sign the manifest.")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Write a quantized model that misses its accuracy "
                                            "target anyway (the numbers are in the manifest).")] = False,
    ) -> None:
        """Convert a trained run to a TFLite model bundle a gateway can verify and run.

        Checks that the model uses only builtin ops with fused LSTMs, measures parity with Keras on the run's
        windows, records the runtimes it ran on, and embeds a golden self-test.

        Example: vibrawatch convert runs/ims2 --out bundles/ims2.tar --sign-key keys/vibrawatch-signing.key
        """
        from .bundle import build_bundle

        typer.echo(json.dumps(build_bundle(run_dir, out, quantize, sign_key, force), indent=2))

    @keys_app.command("new")
    @user_errors
    def keys_new(
        out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the key pair.")] = Path("keys"),
    ) -> None:
        """Make an Ed25519 key pair: the private key (mode 0600) signs bundles, the public key goes to gateways."""
        from .keys import new_keypair

        priv, pub = new_keypair(out_dir)
        typer.echo(f"private key {priv} (keep it here, mode 0600)\npublic key  {pub} (copy it to every gateway)")

    @bundle_app.command("verify")
    @user_errors
    def bundle_verify(
        bundle: Annotated[Path, typer.Argument(help="A bundle directory or .tar.")],
        public_key: Annotated[
            Path | None, typer.Option("--public-key", help="Public key to check the signature with.")
        ] = None,
    ) -> None:
        """Run every check the gateway runs: layout, schema, sha256 of each file, signature, runtime, self-test."""
        from vibrawatch.agent.bundle import load_bundle

        b = load_bundle(bundle, public_key)
        signed = "signature ok" if public_key else "signature not checked (no --public-key)"
        typer.echo(f"ok: {b.path} version {b.version}; checksums ok; {signed}; self-test ok on {b.model.runtime}")

    @bundle_app.command("show")
    @user_errors
    def bundle_show(bundle: Annotated[Path, typer.Argument(help="A bundle directory or .tar.")]) -> None:
        """Summarize a bundle's manifest: model, features, threshold, training data, parity, runtimes."""
        from .bundle import describe

        typer.echo(describe(bundle))
