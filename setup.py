"""pip install of the Python package alone, for the ML-only workflow (train / evaluate / plan).

ROS users build the package with colcon (CMakeLists.txt), which also generates the messages;
`pip install .` gives the same modules without `resilient_perception.msg` and installs the
`resilient-perception` console script. The placement solvers (OR-Tools CP-SAT, the default of
`plan`, and pymoo's GA) are part of that workflow; ONNX export and ONNX Runtime are the
`[onnx]` extra (`pip install '.[onnx]'`, or `'.[gpu]'` for the CUDA/TensorRT build), the bag
commands' `rosbags` the `[bags]` extra: the
commands that need them say so and exit 2.
"""

from setuptools import find_packages, setup

setup(
    name="resilient_perception",
    version="0.1.0",
    description="Fault-tolerant multi-camera perception: device CNNs, Modifier surrogates, "
    "fusion, and distributed ResNet placement.",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["resilient_perception", "resilient_perception.*"]),
    # The dashboard's page (colcon installs the whole package folder, this included).
    package_data={"resilient_perception.dashboard": ["static/*"]},
    install_requires=[
        "numpy>=1.24",
        "torch>=2.1",
        "safetensors>=0.4",
        "pillow>=9",
        "pyyaml>=6",
        "tqdm>=4.60",
        "scipy>=1.10",
        "matplotlib>=3.6",
        "ortools>=9.8",
        "pymoo>=0.6",
    ],
    # `[gpu]` is `[onnx]` with NVIDIA's ONNX Runtime build (CUDA and TensorRT providers);
    # install one of the two, not both (they ship the same `onnxruntime` module).
    extras_require={"onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
                    "gpu": ["onnx>=1.15", "onnxruntime-gpu>=1.17"],
                    "bags": ["rosbags>=0.10"]},
    entry_points={"console_scripts": ["resilient-perception=resilient_perception.cli:main"]},
)
