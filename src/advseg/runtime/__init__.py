"""What every torch process of advseg shares, whatever it trains or predicts: the device
(:mod:`advseg.runtime.device`) and checkpoint files (:mod:`advseg.runtime.checkpoint`). It sits below
both training and inference, so that training writes and inference reads one checkpoint format."""
