"""The papers' reproduction protocols and reports, without ROS.

The Modifier paper's evaluation protocol and tables, the blank-view study, the per-device
cost (Table 3), the drop-study report (Tables I, II) and the placement experiments
(Section V). Built on :mod:`..perception` and :mod:`..placement`.
"""
