"""One module per device kind; each model is a small state machine stepped in simulated time
(``base.DeviceModel``)."""
