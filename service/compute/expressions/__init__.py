"""The formula language: parsed and checked against an allow-list, compiled to torch calls
(``language``), and differentiated (``differentiate``)."""
