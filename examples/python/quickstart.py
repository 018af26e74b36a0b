#!/usr/bin/env python3
"""aitokens from Python: create, list, resolve and remove a token over mTLS,
and read the details of an error.

Uses only the contract in proto/ (code generated with grpcio-tools, never
committed) and the connection settings of a profile (the one `aitokens dev`
writes by default). Run it from the directory where `aitokens dev` runs:

    mkdir -p aitokens-dev/python
    python3 -m grpc_tools.protoc -I proto --python_out=aitokens-dev/python \
        --grpc_python_out=aitokens-dev/python proto/aitokens/v1/*.proto
    python3 examples/python/quickstart.py

The value is read from standard input, or prompted for without echo when
standard input is a terminal; it is never an argument and never printed.

Environment: AITOKENS_PROFILE (default aitokens-dev/profile.toml),
AITOKENS_PYTHON_OUT (generated code, default aitokens-dev/python),
AITOKENS_TENANT (default acme), AITOKENS_TOKEN_ID (default python-example).
"""

import getpass
import os
import pathlib
import sys
import tomllib

PROFILE = pathlib.Path(os.environ.get("AITOKENS_PROFILE", "aitokens-dev/profile.toml"))
GENERATED = pathlib.Path(os.environ.get("AITOKENS_PYTHON_OUT", "aitokens-dev/python"))
TENANT = os.environ.get("AITOKENS_TENANT", "acme")
TOKEN_ID = os.environ.get("AITOKENS_TOKEN_ID", "python-example")

sys.path.insert(0, str(GENERATED))

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402  (from googleapis-common-protos)
from grpc_status import rpc_status  # noqa: E402

try:
    from aitokens.v1 import admin_pb2, admin_pb2_grpc, token_pb2  # noqa: E402
    from aitokens.v1 import resolver_pb2, resolver_pb2_grpc  # noqa: E402
except ImportError as e:
    sys.exit(f"generated code not found in {GENERATED} ({e}): run grpc_tools.protoc first")


def channel(profile, addr_key, identity_key):
    """A TLS channel to one listener, presenting one of the profile's identities."""
    base = PROFILE.parent

    def read(path):
        return (base / path).read_bytes()

    identity = profile[identity_key]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(profile["ca"]),
        private_key=read(identity["key"]),
        certificate_chain=read(identity["cert"]),
    )
    options = []
    if "server_name" in profile:
        options.append(("grpc.ssl_target_name_override", profile["server_name"]))
    return grpc.secure_channel(profile[addr_key], credentials, options)


def read_value():
    if sys.stdin.isatty():
        return getpass.getpass(f"Value of tenants/{TENANT}/tokens/{TOKEN_ID} (input hidden): ")
    value = sys.stdin.read()
    return value[:-1] if value.endswith("\n") else value


def error_details(error):
    """(ErrorInfo reason, [(field, description)]) from a failed call's status details."""
    status = rpc_status.from_call(error)
    reason, fields = None, []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [(v.field, v.description) for v in bad.field_violations]
    return reason, fields


def main():
    profile = tomllib.loads(PROFILE.read_text())
    value = read_value()
    parent = f"tenants/{TENANT}"
    with channel(profile, "admin_addr", "admin") as admin_channel, channel(
        profile, "internal_addr", "resolver"
    ) as internal_channel:
        admin = admin_pb2_grpc.TokenAdminStub(admin_channel)
        resolver = resolver_pb2_grpc.TokenResolverStub(internal_channel)

        created = admin.CreateToken(
            admin_pb2.CreateTokenRequest(
                parent=parent,
                token_id=TOKEN_ID,
                token=token_pb2.Token(display_name="Created from Python"),
                value=value,
            ),
            timeout=10,
        )
        print(f"created {created.name} (etag {created.etag})")

        listed = admin.ListTokens(admin_pb2.ListTokensRequest(parent=parent), timeout=10)
        print(f"listed {parent}: {', '.join(t.token_id for t in listed.tokens)}")

        resolved = resolver.ResolveToken(resolver_pb2.ResolveTokenRequest(name=created.name), timeout=10)
        if resolved.value != value:
            sys.exit("resolved value differs from the created one")
        print(f"resolved {resolved.name}: the value matches ({len(resolved.value)} characters)")

        try:
            admin.CreateToken(
                admin_pb2.CreateTokenRequest(
                    parent=parent, token_id="Bad_Id", token=token_pb2.Token(display_name="x"), value="v"
                ),
                timeout=10,
            )
            sys.exit("a bad token id was accepted")
        except grpc.RpcError as error:
            reason, fields = error_details(error)
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT or not any(f == "token_id" for f, _ in fields):
                sys.exit(f"unexpected error: {error.code()} {fields}")
            field, description = fields[0]
            print(f"refused as expected: {error.code().name} {reason}, field {field}: {description}")

        # It was resolved a moment ago, so a plain remove would be refused
        # (FAILED_PRECONDITION, the recent caller listed); force it.
        admin.RemoveToken(
            admin_pb2.RemoveTokenRequest(name=created.name, etag=created.etag, force=True), timeout=10
        )
        print(f"removed {created.name}")


if __name__ == "__main__":
    main()
