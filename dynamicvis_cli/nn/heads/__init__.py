"""Task heads on the DynamicVis backbone/FPN, reusing torchvision's models and ops where they exist."""
