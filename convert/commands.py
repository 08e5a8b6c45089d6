"""Workstation commands for conversion and bundles: `convert`, `keys new`, `bundle verify|show`, `deploy`.

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
        from vibrawatch.agent.model.bundle import load_bundle

        b = load_bundle(bundle, public_key)
        signed = "signature ok" if public_key else "signature not checked (no --public-key)"
        typer.echo(f"ok: {b.path} version {b.version}; checksums ok; {signed}; self-test ok on {b.model.runtime}")

    @app.command("deploy")
    @user_errors
    def deploy_cmd(
        bundle: Annotated[Path, typer.Argument(help="A signed bundle (.tar or directory); or the word `status`.")],
        broker: Annotated[str, typer.Option("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT.")],
        site: Annotated[str, typer.Option("--site", help="The site, as in the gateways' agent.site.")],
        device: Annotated[list[str] | None, typer.Option("--device", help="A target device (repeatable).")] = None,
        all_devices: Annotated[bool, typer.Option(
            "--all", help="Every device of the site that has a status on the broker (its retained birth message), "
            "offline ones too.")] = False,
        sign_key: Annotated[Path, typer.Option("--sign-key", help="Private key that signs the request; the bundle "
                                               "must be signed with it too.")] = Path("keys/vibrawatch-signing.key"),
        wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the outcomes.")] = 120.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts).")] = False,
        ca_file: Annotated[Path | None, typer.Option("--ca-file", help="CA certificate for mqtts://.")] = None,
        cert_file: Annotated[Path | None, typer.Option("--cert-file", help="Client certificate (mqtts://).")] = None,
        key_file: Annotated[Path | None, typer.Option("--key-file", help="Client certificate's key.")] = None,
        username: Annotated[str | None, typer.Option("--username", help="MQTT user name.")] = None,
        password_file: Annotated[Path | None, typer.Option("--password-file", help="File holding the MQTT "
                                                           "password (never on the command line).")] = None,
    ) -> None:
        """Deploy a signed model bundle to gateways over MQTT and report each one's outcome.

        Each gateway verifies the request and the bundle, swaps it in atomically, runs it on probation and
        keeps it or rolls back. Exit 0 only when every target applied it. A gateway that is offline gets the
        request when it reconnects. `vibrawatch deploy status --site SITE` shows each device's last outcome.

        Example: vibrawatch deploy bundles/ims2.tar --broker mqtts://broker.plant:8883 --site plant1 --all
        --ca-file ca.pem --sign-key keys/vibrawatch-signing.key
        """
        from .deploy import BrokerOptions, deploy, site_status, table

        opts = BrokerOptions(broker, ca_file, cert_file, key_file, username, password_file)
        if str(bundle) == "status" and not bundle.exists():
            rows = site_status(opts, site)
            if as_json:
                typer.echo(json.dumps(rows, indent=2))
            else:
                shown = [{**r, "model_sha256": (r["model_sha256"] or "")[:12] or None} for r in rows]
                typer.echo(table(shown, ["device", "state", "model", "model_sha256", "deployment", "outcome",
                                         "reason", "when", "pending"]))
            return
        report = deploy(bundle, opts, site, device or [], all_devices, sign_key, wait)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            typer.echo(f"deployment {report['deployment']}: {report['version']} to site {site}; model sha256 "
                       f"{report['model_sha256'][:12]} (as `fleet` and the page show it), bundle file "
                       f"{report['bundle_bytes']} bytes, sha256 {report['bundle_sha256'][:12]}")
            typer.echo(table(report["results"], ["device", "from", "to", "outcome", "reason", "seconds"]))
        if not report["ok"]:
            failed = [f"{r['device']} {r['outcome']}" for r in report["results"] if r["outcome"] != "applied"]
            typer.echo(f"not applied everywhere: {', '.join(failed)}", err=True)
            raise typer.Exit(1)

    @bundle_app.command("show")
    @user_errors
    def bundle_show(bundle: Annotated[Path, typer.Argument(help="A bundle directory or .tar.")]) -> None:
        """Summarize a bundle's manifest: model, features, threshold, training data, parity, runtimes."""
        from .bundle import describe

        typer.echo(describe(bundle))
