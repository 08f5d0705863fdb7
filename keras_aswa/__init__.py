"""Adaptive Stochastic Weight Averaging for Keras 3.

Example:

```python
from keras_aswa import ASWA

model.fit(x, y, validation_split=0.1, epochs=50, callbacks=[ASWA()])
```
"""

from keras_aswa.batchnorm import update_batchnorm
from keras_aswa.callbacks import ASWA, SWA
from keras_aswa.plotting import plot_history

__version__ = "0.1.0"

__all__ = ["ASWA", "SWA", "update_batchnorm", "plot_history", "__version__"]
