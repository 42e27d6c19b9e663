"""Dependencies point one way: the domain imports only the standard library and itself."""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

SERVER = pathlib.Path(__file__).resolve().parents[1] / "server" / "imageloc" / "server"


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def allowed_for_domain(module: str) -> bool:
    top = module.split(".", maxsplit=1)[0]
    return top in sys.stdlib_module_names or module.startswith("imageloc.server.domain")


@pytest.mark.parametrize("path", sorted((SERVER / "domain").glob("*.py")), ids=lambda p: p.name)
def test_domain_imports_neither_grpc_nor_the_database(path: pathlib.Path) -> None:
    forbidden = sorted(m for m in imported_modules(path) if not allowed_for_domain(m))
    assert forbidden == []


def test_service_imports_only_the_domain() -> None:
    modules = imported_modules(SERVER / "service.py")
    outside = sorted(m for m in modules if not allowed_for_domain(m) and m != "__future__")
    assert outside == []


def test_only_the_rpc_error_mapping_and_servicer_build_grpc_statuses() -> None:
    users = sorted(
        path.name
        for path in SERVER.rglob("*.py")
        if "google.rpc" in " ".join(imported_modules(path))
    )
    assert users == ["errors.py", "servicer.py"]


def test_the_method_table_names_every_rpc_once_with_its_request_id() -> None:
    from imageloc.server.rpc.methods import METHODS
    from imageloc.v1 import image_service_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["ImageService"]
    assert set(METHODS) == {method.name for method in service.methods}
    for method in service.methods:
        fields = method.input_type.fields_by_name
        assert METHODS[method.name].request_id == ("request_id" in fields), method.name
        assert METHODS[method.name].writes == METHODS[method.name].request_id, method.name
