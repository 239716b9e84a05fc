"""The natsbench dashboard: a read-only Streamlit app over the result store.

`app.py` is the Streamlit script (`natsbench dashboard` serves it); `views.py` lays out the
pages; `data.py` and `charts.py` are pure functions of DataFrames (tested as data);
`source.py` opens the store read-only; `paper_reference.py` holds the published NAtS points.
"""
