"""KFP components (lightweight Python components on the training image)."""
