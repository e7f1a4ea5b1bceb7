"""skinapp: start with `streamlit run app.py`. Thin by design: page config, navigation, the disclaimer."""
import streamlit as st

from skinapp.ui import common, compare, diagnose, models, train

st.set_page_config(page_title="skinapp — lesion KD workbench", page_icon=":material/biotech:", layout="wide")
pages = [
    st.Page(diagnose.render, title="Analyse", icon=":material/image_search:", url_path="analyse", default=True),
    st.Page(compare.render, title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page(models.render, title="Models", icon=":material/inventory_2:", url_path="models"),
]
if common.training_enabled():  # SKINAPP_TRAINING=off hides the Train page for demos
    pages.append(st.Page(train.render, title="Train", icon=":material/model_training:", url_path="train"))
nav = st.navigation(pages)
common.disclaimer()
nav.run()
st.caption("skinapp · research and education use only · models trained on ISIC Archive images")
