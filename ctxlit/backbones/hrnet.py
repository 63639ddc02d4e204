"""HRNet (placeholder until implemented)."""
HRNET_OPTIONS = ()


def hrnet(variant, **kwargs):
    raise NotImplementedError(f"hrnet_{variant} is not implemented yet")
