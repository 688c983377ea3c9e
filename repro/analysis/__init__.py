"""The seed's analyses of RMSNorm and pRMSNorm, each measured (not asserted from theory), each
writing a figure and a short Markdown note: `repro-tables analyze NAME --out results/analysis`."""
