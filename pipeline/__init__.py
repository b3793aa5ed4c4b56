"""azamrecon domain: config, models, callback parsing, the pure fold, store functions, AzamPay client."""
