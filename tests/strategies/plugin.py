"""A user strategy as the README shows it: share only the classifier head."""

from fedbarrier.measure.layers import LayerGroups
from strategies.layerwise import LayerwiseFedAvg


class HeadOnly(LayerwiseFedAvg):
    """Average only the last layer; everything below stays personal."""

    def __init__(self, groups: LayerGroups, **kwargs):
        super().__init__(groups, shared=list(groups)[-1:], **kwargs)
