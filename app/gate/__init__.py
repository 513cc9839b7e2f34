"""The layered OOD gate: bounds (reject), support, input density and epistemic uncertainty (refer).

``spec`` is the manifest section (pydantic), ``gate`` applies it with numpy (both serving backends and
evaluation). Fitting and calibration need the network and live in ``app.train.calibrate``; the stress suite
and the reports live in ``app.evaluate``.
"""
