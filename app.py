"""skinapp: start with `streamlit run app.py`. Thin by design: page config, navigation, the disclaimer."""
import streamlit as st

from skinapp.ui import common, compare, diagnose, models, train

st.set_page_config(page_title="skinapp — lesion KD workbench", page_icon="🔬", layout="wide")
pages = [
    st.Page(diagnose.render, title="Diagnose", icon="🩺", url_path="diagnose", default=True),
    st.Page(compare.render, title="Compare", icon="⚖️", url_path="compare"),
    st.Page(models.render, title="Models", icon="📇", url_path="models"),
    st.Page(train.render, title="Train", icon="🏋️", url_path="train"),
]
nav = st.navigation(pages)
common.disclaimer()
nav.run()
st.caption("skinapp · research and education use only · models trained on ISIC Archive images")
