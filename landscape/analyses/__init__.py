"""Analyses of a finished run, each reading its checkpoints and writing records beside them:
curvature over training (``hessian``), internal covariate shift (``ics``), pre-activation
statistics (``activations``) and loss-landscape pictures (``pictures``: surfaces and
interpolation). The estimators they apply live in the core modules of the same topic
(``landscape.curvature``, ``landscape.ics``, ``landscape.activations``, ``landscape.surfaces``).
"""
