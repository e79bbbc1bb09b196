//! Dense linear algebra in float64: the SVD with the sign convention, LaMDA initialisation, spectra for LaMDA++.
