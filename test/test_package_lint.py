"""Static checks of the package manifest and the code style (ruff)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from test.conftest import ROOT


def test_package_xml_is_valid_format_3():
    catkin_pkg = pytest.importorskip("catkin_pkg.package", reason="catkin_pkg not installed")
    package = catkin_pkg.parse_package(ROOT / "package.xml")  # validates against format 3
    assert package.package_format == 3
    assert package.name == "resilient_perception"
    assert package.get_build_type() == "ament_cmake"
    exec_deps = {d.name for d in package.exec_depends}
    assert {"rclpy", "sensor_msgs", "diagnostic_msgs", "rosidl_default_runtime"} <= exec_deps
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}


def test_package_xml_version_matches_python_package():
    import resilient_perception

    version = ET.parse(ROOT / "package.xml").getroot().findtext("version")
    assert version == resilient_perception.__version__


def test_every_msg_file_is_generated():
    msgs = pytest.importorskip("resilient_perception.msg", reason="messages not built")
    for path in (ROOT / "msg").glob("*.msg"):
        assert hasattr(msgs, path.stem), f"{path.name} has no generated class"


def test_ruff_is_clean():
    pytest.importorskip("ruff", reason="ruff not installed")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
