"""Builds the PostgreSQL proxy's native relay (plugins/jitvault_postgres/_relay.c) with every
wheel and editable install: a C compiler and the Python headers are needed (Debian: gcc and
python3-dev). ``JITVAULT_NO_NATIVE=1`` skips it; the proxy then relays in Python only.

With OpenSSL's headers (Debian: libssl-dev), the relay takes TLS sessions over too (it drives
the OpenSSL connections that Python's ssl module made, so it links the same libssl); without
them, or with ``JITVAULT_NO_NATIVE_TLS=1``, it is built for plain-TCP sessions only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def openssl_flags() -> tuple[list[str], list[str]] | None:
    """The compile and link flags of OpenSSL (pkg-config's, else the system include
    directory's); None where its headers are not installed or TLS is turned off."""
    if os.environ.get("JITVAULT_NO_NATIVE_TLS") == "1":
        return None
    if shutil.which("pkg-config"):
        found = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "openssl"], capture_output=True, text=True
        )
        if found.returncode == 0:
            flags = found.stdout.split()
            return [f for f in flags if not f.startswith("-l")], [
                f for f in flags if f.startswith("-l")
            ]
    if Path("/usr/include/openssl/ssl.h").exists():
        return [], ["-lssl", "-lcrypto"]
    return None


class NativeRelayBuild(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("JITVAULT_NO_NATIVE") == "1" or not sys.platform.startswith("linux"):
            return
        from setuptools import Distribution, Extension
        from setuptools.command.build_ext import build_ext

        root = Path(self.root)
        openssl = openssl_flags()
        tls_compile, tls_link = openssl if openssl is not None else ([], [])
        if openssl is None:
            print("jitvault: no OpenSSL headers: the native relay is built for plain TCP only")
        extension = Extension(
            "jitvault_postgres._relay",
            [str(root / "plugins" / "jitvault_postgres" / "_relay.c")],
            # rebuilt when the framing header changes too, not only the .c file
            depends=[
                str(root / "plugins" / "jitvault_postgres" / name)
                for name in ("_framing.h", "_statements.h", "_cycles.h")
            ],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", *tls_compile],
            extra_link_args=tls_link,
            define_macros=[("JV_TLS", "1")] if openssl is not None else [],
        )
        distribution = Distribution(
            {
                "name": "jitvault-native-relay",
                "ext_modules": [extension],
                "package_dir": {"jitvault_postgres": str(root / "plugins" / "jitvault_postgres")},
            }
        )
        command = build_ext(distribution)
        command.inplace = True
        command.build_temp = str(root / "build" / "native")
        command.ensure_finalized()
        command.run()
        built = Path(command.get_ext_fullpath("jitvault_postgres._relay")).resolve()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(built)] = f"jitvault_postgres/{built.name}"
