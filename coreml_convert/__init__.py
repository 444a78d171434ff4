"""Core ML conversion of Mobile-O: Neural-Engine components, checked against upstream and on numpy."""
