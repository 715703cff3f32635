"""Sources of the example data sets: public URLs pinned to a commit, sha256 and size of every file.

All checksums were computed from the published files (they are byte-identical to the copies in the shared mirror
``../shared/data``); each ``mirror_path`` is the file's place in such a mirror (``$SCFM_MIRROR``).
"""

from __future__ import annotations

from scfm.models._registry import RemoteFile

__all__ = [
    "PBMC200",
    "PBMC_10X_CHR21_H5",
    "PBMC_10X_CHR21_MTX",
    "VISIUM_MINI",
    "VISIUM_MINI_PROCESSED",
    "ORTHOLOGS_TSV",
    "ORTHOLOGS_RDA",
    "HER2ST_SECTIONS",
    "her2st_files",
]

_SCVI = "https://raw.githubusercontent.com/scverse/scvi-tools/93dc4fae21917406673206320c8a3002433c4a5d"
_SCANPY = "https://raw.githubusercontent.com/scverse/scanpy/fabadb9412c0d1cd9df9d9c2e95ac266d564ee18"
_SQUIDPY = "https://raw.githubusercontent.com/scverse/squidpy/be17fcf6afddbf06011429a6cf43b70cb9fac9b4"
_HER2ST = "https://raw.githubusercontent.com/almaan/her2st/85df7411b987a7dec3feff9718b869a7a82091ec"
_MARKERGENES = "https://raw.githubusercontent.com/RHReynolds/MarkerGenes/b1fae6892f13c5a8c323b01b65477cfb7525b7ff"

# 200 PBMCs of 10x "pbmc_10k_protein_v3" (raw counts + CITE-seq proteins), the scvi-tools test file (identical
# since commit 9027fa1, where it lived at tests/data/).
PBMC200 = RemoteFile(
    filename="pbmc_10k_protein_v3_200cells.h5ad",
    url=f"{_SCVI}/tests/test_data/pbmc_10k_protein_v3.h5ad",
    sha256="512fe360bd1cc79821f67959cc47e19b92bb7edbbb9351da5d1e9d70b35102a2",
    size=2_064_068,
    mirror_path="data/pbmc/pbmc_10k_protein_v3_200cells.h5ad",
)

# Cell Ranger v3 output (chr21 genes of 1,107 PBMCs) from scanpy's test data, as .h5 and as the mtx folder.
_CHR21 = f"{_SCANPY}/tests/_data/10x_data/3.0.0"
PBMC_10X_CHR21_H5 = RemoteFile(
    filename="filtered_feature_bc_matrix.h5",
    url=f"{_CHR21}/filtered_feature_bc_matrix.h5",
    sha256="d55cc5f32ebb8b70746d546baa300448949f69efd4ee5022bbd9330af3cd4212",
    size=100_207,
    mirror_path="data/pbmc/10x_v3_chr21/filtered_feature_bc_matrix.h5",
)
PBMC_10X_CHR21_MTX = tuple(
    RemoteFile(
        filename=name,
        url=f"{_CHR21}/filtered_feature_bc_matrix/{name}",
        sha256=sha,
        size=size,
        mirror_path=f"data/pbmc/10x_v3_chr21/filtered_feature_bc_matrix/{name}",
    )
    for name, sha, size in (
        ("barcodes.tsv.gz", "e3490ae2c4cbc0b8b4001cefa47e0d6efa23e59aa57e760aee593bd66605e90a", 6_423),
        ("features.tsv.gz", "a5ee587a04a1744a2922018e4c92626489908ad48870433c2095184542482fcd", 4_774),
        ("matrix.mtx.gz", "0d40c3b07c32089c3b310d0914670b9513407bfad18d6529f20046fe4bbd4eaf", 73_946),
    )
)

# A tiny Visium mouse-brain section in the Space Ranger layout (squidpy's test data).
VISIUM_MINI = tuple(
    RemoteFile(
        filename=name.rsplit("/", 1)[-1],
        url=f"{_SQUIDPY}/tests/_data/{name}",
        sha256=sha,
        size=size,
        mirror_path=f"data/visium_mouse_brain_mini/{name}",
    )
    for name, sha, size in (
        ("filtered_feature_bc_matrix.h5", "9b6cb386df8327ea7aec1d3ea87c73bac766dbf9b03003d70154c024c61f855a", 35_962),
        ("spatial/scalefactors_json.json", "569586afb623a0aa90aaa7997894d954ea4242e5796e9fedfed4826f6be349dc", 179),
        ("spatial/tissue_hires_image.png", "2647a9d1ac01e4269b669cc183dd0b4d0ea5c69c2de97b6c02d19d53002cc01e", 20_014),
        ("spatial/tissue_lowres_image.png", "7069e504911a86c16aac826194fd28a3a0883d05e7ccb84b72781635c676891d", 518124),
        ("spatial/tissue_positions_list.csv", "4a3233fee509e56dcd5680f6fb6edeb9373d46a1e47fd5f9af3c90e2c34e1752", 3737),
    )
)
# squidpy's processed 49-spot AnnData of the same kind of section, and its H&E crop.
VISIUM_MINI_PROCESSED = tuple(
    RemoteFile(
        filename=name,
        url=f"{_SQUIDPY}/tests/_data/{name}",
        sha256=sha,
        size=size,
        mirror_path=f"data/visium_mouse_brain_mini/{name}",
    )
    for name, sha, size in (
        ("test_data.h5ad", "f0227d2639b803401afd65c432ac047c6f04710221dbdf7f3d70a18eff1a3766", 602_117),
        ("test_img.jpg", "b87670003e05039f8c924d53fe98f3606991c78ffc629a3ee8f56bc5dd134269", 229_870),
    )
)

# Ensembl BioMart human -> mouse homologs. Upstream it is an R data file (RHReynolds/MarkerGenes); the mirror holds
# the same table as TSV (identical values, NA written as empty fields).
ORTHOLOGS_TSV = RemoteFile(
    filename="human_mouse_ensembl_biomart.tsv",
    sha256="a603722c416123364c5d50b02d91da47125f8b5149eafd0a68cdf366b8b60572",
    size=1_754_781,
    mirror_path="data/orthologs/human_mouse_ensembl_biomart.tsv",
)
ORTHOLOGS_RDA = RemoteFile(
    filename="mouse_to_human_orthologs.rda",
    url=f"{_MARKERGENES}/data/mouse_to_human_orthologs.rda",
    sha256="f1559416bd7bafae4e6c0bb700602d686aa05362c5d5749261a6e06768978719",
    size=319_889,
    mirror_path="data/orthologs/mouse_to_human_orthologs.rda",
)

# HER2+ breast cancer ST (Andersson et al. 2021): per section, (counts sha256, size), (spot table sha256, size),
# (H&E file name, sha256 or None, size or None). The H&E sha256 is known for the sections the shared mirror holds
# (B4, C2-C6); for the others it is recorded at the first download.
HER2ST_SECTIONS: dict[str, tuple[tuple[str, int], tuple[str, int], tuple[str, str | None, int | None]]] = {
    "A1": (
        ("d91035e5d8a9c4ce7865e4c61446deec1a7318602d41b3220e9fcb3ce7e41fe3", 1033376),
        ("e5f79223be2ea2aebb082c4759059ab7079b0132052d0944209048ac57788c5d", 12879),
        ("9769_C1_HE_small.jpg", None, None),
    ),
    "A2": (
        ("1c84f44bfc0bce6d5647b78e4598e2456f769e29f72ca52911d5bc4be81e410c", 1340590),
        ("b21f48c8492ff1d71c0d0d396dbde64735ff8fa5419bcc6f5cffe60f68d7cb09", 11958),
        ("9769_C2_HE_small.jpg", None, None),
    ),
    "A3": (
        ("dd0107ff76b643d7b72330c7bfe282e2b27eb7dd58b77680b0e6bcbeae95852f", 1358980),
        ("09a5434745c4ce3c6859f3af00ea414a4b947685977e97f24595e77d1a0ff78e", 13441),
        ("9769_D1_HE_small.jpg", None, None),
    ),
    "A4": (
        ("3283ba1bf1550b26119966fe06a844d815e7fc73c493943b936dd3d933c4c331", 1297246),
        ("d1e41fb1d50ea04b55743f3c67104bdde46e1aea6a086e6cfdaf5109da0d2e02", 12712),
        ("9769_D2_HE_small.jpg", None, None),
    ),
    "A5": (
        ("ff40c29d552391b3a4c4f37bb8c5cefce82e4dc64a277d4b80e2425405c59722", 1247949),
        ("1237571fecfa2809292eeb7c7ee6b7da220a516121b94a71802cbbc971dc0daa", 12398),
        ("9769_E1_HE_small.jpg", None, None),
    ),
    "A6": (
        ("65b4f4d25b1afab5b6556c7a6aab2b8910562d03b173cebcf568ab7190695aec", 1314417),
        ("d771bdc9dcb386cce0e628339c9ff94e5392fff191790b31aba4d73ff44b7554", 11860),
        ("9769_E2_HE_small.jpg", None, None),
    ),
    "B1": (
        ("97b3abf2676c596ac7dd53829780005724cab62a6f676697516006481a443f74", 657516),
        ("7ea9963677db80199db928d763b0b34ea1015fb7452e85ac7b21d42ee15c3875", 10794),
        ("BT10737_C1_HE.jpg", None, None),
    ),
    "B2": (
        ("b43cef41e3164ffe4a3b43b6ed396f664d971451d3dc151dea4d91a09e84d95c", 596436),
        ("963e3f0b0e6eb17586788f2228dbd829ca7d13eb0211bf8b1a5685d3a33b8153", 9838),
        ("BT10737_C2_HE.jpg", None, None),
    ),
    "B3": (
        ("bd1fd03f33bdc14ca68a271525587d27b1e78323ea695413d274d6c388becf7a", 613993),
        ("23b07cc9e5142802915cefedb7a8259766b58544fa7a2ac3eda21feaa267b9c9", 10924),
        ("BT10737_D1_HE.jpg", None, None),
    ),
    "B4": (
        ("e38231c2a38c9bc7e6d550eec0e527c1869ee0e525fc913e708d1323c34f5ebb", 563881),
        ("192b46f3ca414c85753a01a4fb5760a697ca6c0a1aadb949c4687cc6efa9faa0", 10560),
        ("BT10737_D2_HE.jpg", "3cb165614ce2a13426381e450220dccac980cc9bda6a90fb041c28ca0e2c753d", 4076552),
    ),
    "B5": (
        ("05bdd1ea4234f62d5223f94a96d37f2f87b48e95062251560cdd676f5514948a", 688429),
        ("dc206c6e6448e81ba55d01f16fa862d07f5f7087fe16772eab919355e43cd1a7", 10631),
        ("BT10737_E1_HE.jpg", None, None),
    ),
    "B6": (
        ("bfb2b4e5d99b6021c43f546a3e773c32f4f13a4b461cdd1684d364f9fe550e2b", 625356),
        ("63b90d6283071d2db43d5486eeba0e76091998e64fa8c4a95b4501086c8aff33", 10247),
        ("BT10737_E2_HE.jpg", None, None),
    ),
    "C1": (
        ("8383130eebf0f9f8186f006ed6b704149ba62303605a312a9080fa9901be9c20", 752999),
        ("9a5187c98d2c312064057d3bad192d4a19105b5135ff2b68f5e4547cade0954d", 6631),
        ("5714_HE_BT_C1.jpg", None, None),
    ),
    "C2": (
        ("c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d", 821408),
        ("235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c", 7053),
        ("5714_HE_BT_C2.jpg", "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e", 3990230),
    ),
    "C3": (
        ("e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a", 847901),
        ("7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755", 6728),
        ("5714_HE_BT_D1.jpg", "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568", 3915842),
    ),
    "C4": (
        ("33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da", 886246),
        ("47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c", 6960),
        ("5714_HE_BT_D2.jpg", "f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2", 3806070),
    ),
    "C5": (
        ("c0f310315ca6110d74dbdf7011e5b42432ba0b8eb5f001824764911988f39338", 845308),
        ("2114cc3b4da759772112897f1e247d5443c9f8c808e6a9a952eb4fda379a194c", 6802),
        ("5714_HE_BT_E1.jpg", "34028ea41e376396b50c42b0a11a7e689c85be4a8022e668d0a09cc128c04c65", 3719130),
    ),
    "C6": (
        ("60478b0d2411501866685f41312c65c6591e499d64d5b719be8ee9bab25c9bc8", 892853),
        ("efdbbc6759c6af43baa966505c31705f09c087c1dccf1ea3e0d1db7b55717117", 6655),
        ("5714_HE_BT_E2.jpg", "dddd87232589648861a9b6776dc1749be8306213f6589aeef0e805fb2b1ee263", 3941039),
    ),
    "D1": (
        ("8fe13d29763b3f6a9e85322dae97e05c4ca42b57cef4b1077c88b9b7b6a980ac", 1251370),
        ("7ba7843b52ddc2b147ee968fe9466a5d1fa0d884b51def292ce340d88da034eb", 11444),
        ("10426_HE_BT_C1.jpg", None, None),
    ),
    "D2": (
        ("e63818ad8717b47ca949e082c1f28b9c807475b8d722a6f5c1acda7b618b5495", 990376),
        ("5e0cadc230094060d071124cfb5ab6223d3dbb56b6aa6c3e4f8f9c8f1e329fb5", 11223),
        ("10426_HE_BT_C2.jpg", None, None),
    ),
    "D3": (
        ("0bdfa82f3a2f4c659757cbd9f9b5734f9faabc44c4ee72094bf2b8609c86e01f", 1061872),
        ("e820564d7720c1fbc9910f5440368a43a2b862d617a9c107582ddb706af61a3b", 11120),
        ("10426_HE_BT_D1.jpg", None, None),
    ),
    "D4": (
        ("4da2a65ffdd6ce52993e4f68b3730326c00ce9304cf8aebaf125efe9997fb898", 1023224),
        ("82e12ff5f14a9564fd0aa9755243e4412e6786fdb559210cef9c3c6ff35a05b0", 11260),
        ("10426_HE_BT_D2.jpg", None, None),
    ),
    "D5": (
        ("a1592e1742913cd37f2534153467752ded6eade730d5acdc227daad55c9e551f", 1073620),
        ("f19eebb34f6a031fe766715d7f97a7682e201f30097fd0fa15ebf8f34ff95853", 11517),
        ("10426_HE_BT_E1.jpg", None, None),
    ),
    "D6": (
        ("3b9ab37e0cacf7956da1354c8c0ee2a7fc5e12be78ccb4d10578df36a6bf7271", 1011895),
        ("82d80015e0e789bbbfe2d6ea033da43207a1803666a0ec5b162db380b3cc1cb7", 11921),
        ("10426_HE_BT_E2.jpg", None, None),
    ),
    "E1": (
        ("b2f572ea0a95d256cb172a9284e96b6d2ff236398d4934a992df85c96d11c4cc", 1017499),
        ("a979c36f6310fff965c96f05ad290ca322d88e400b5aed2a1139fdd6f0e2da92", 21672),
        ("HE_BT23567_D2.jpg", None, None),
    ),
    "E2": (
        ("a725a87e1a74ef0c096d421664dd9100bf973e5768c28acfa9c17abb63677a95", 1256268),
        ("1beeac4b7a45e432eb4d9c34460e7a2a3342f77e0bb6dcffae66ae31b1584444", 21116),
        ("HE_BT23567_E1.jpg", None, None),
    ),
    "E3": (
        ("8030d33e51c2831f7c758ed0374baa9f121d2e2dce6decd47228ff070c7f0ac4", 1237843),
        ("f0fe37cfb98e3757587d0d43d45fc734b3627d336ccab4da179548b86c5c1d9c", 21146),
        ("HE_BT23567_E2.jpg", None, None),
    ),
    "F1": (
        ("187aa13f204d514851d3674dfa09b4a8d7f2676f1d40d2ef63e9e368c7cf672a", 1778749),
        ("cf479a5812c317541c7f7d6a4ebf1bfd93b0a1ab3eef35a8da15b9e76164f2f4", 25344),
        ("HE_BT23810_D2.jpg", None, None),
    ),
    "F2": (
        ("7de4ca7c3ccb923f4d636b21a4639284c66da9d97a93e1ab6712b3c453229c04", 1880241),
        ("3a9149a67b05971dfb27edb2261d9ffd2443543021356b0d46f26d8237c1a20d", 25504),
        ("HE_BT23810_E1.jpg", None, None),
    ),
    "F3": (
        ("6b7eb2d7ff8c6a8826cfba304de2d3b87bb8e30f68d050b83007de9888546743", 1900113),
        ("106ba9b275b29fd745116b8961a1a0bb39ec41d9d0433932d6b129f98a46c093", 26018),
        ("HE_BT23810_E2.jpg", None, None),
    ),
    "G1": (
        ("396153436dfc39e199bdc01447b3f8929aef598d7064c0c24a33da00f54570ea", 852454),
        ("0e2f630e09a7c0e1869918c0c9afebcff36b86006a6809533fb09405c831a01d", 16203),
        ("HE_BT23903_C1a.jpg", None, None),
    ),
    "G2": (
        ("9d51a5ed85bdf60069dcf51beeffba4e90e35e8630ec3b707a2453ffdd608e3b", 954118),
        ("abae30bb6f434cb2aae34b8ef56da6b613c840d48c49279d55f4600ad496245c", 17128),
        ("HE_BT23903_C2a.jpg", None, None),
    ),
    "G3": (
        ("9fd3c8efb94239b567157860224a33417d798a65d3a28fb9982651795cb2259e", 837354),
        ("6f258aa6b4d432d29f0b7ba4a9be64ac7e58fbc430523a41e4eb5bdf13127272", 17139),
        ("HE_BT23903_D1a.jpg", None, None),
    ),
    "H1": (
        ("90b391782535f38c9ab20fe8b38f44ebbfdad2201075a677a198cbef12c29b07", 972770),
        ("fc9cc5bad3a1e26e48f435696259df38b500042a9565486c15fd37ab7d8f9ed6", 22695),
        ("HE_BT24044_D2.jpg", None, None),
    ),
    "H2": (
        ("e839f271f2cde0ccf8f43f4358133f066be5d75d982839eba75abd7967486a34", 1023577),
        ("c38d3ade8b5674633097b23a66a554831193cee48ba54a7d7418291a9f5533f9", 22331),
        ("HE_BT24044_E1.jpg", None, None),
    ),
    "H3": (
        ("5771d4793f4e1377ed066f27cdbc703d3317c81b7dd5323a175d2227c7e3ae1d", 733852),
        ("430da6f95105eb660f4e8b9b688d44d0d28b3ff66fee3e201cc160ee5739a28c", 18964),
        ("HE_BT24044_E2.jpg", None, None),
    ),
}


def her2st_files(section: str) -> tuple[RemoteFile, RemoteFile, RemoteFile]:
    """Counts, spot table and H&E image of one HER2+ section (e.g. ``"C3"``)."""
    try:
        (c_sha, c_size), (s_sha, s_size), (img, i_sha, i_size) = HER2ST_SECTIONS[section]
    except KeyError:
        raise ValueError(
            f"Unknown HER2+ ST section {section!r}; the data set has {', '.join(HER2ST_SECTIONS)}."
        ) from None
    counts = RemoteFile(
        filename=f"{section}.tsv.gz",
        url=f"{_HER2ST}/data/ST-cnts/{section}.tsv.gz",
        sha256=c_sha,
        size=c_size,
        mirror_path=f"data/her2st/counts/{section}.tsv.gz",
    )
    spots = RemoteFile(
        filename=f"{section}_selection.tsv",
        url=f"{_HER2ST}/data/ST-spotfiles/{section}_selection.tsv",
        sha256=s_sha,
        size=s_size,
        mirror_path=f"data/her2st/spots/{section}_selection.tsv",
    )
    image = RemoteFile(
        filename=f"{section}_{img}",
        url=f"{_HER2ST}/data/ST-imgs/{section[0]}/{section}/{img}",
        sha256=i_sha,
        size=i_size,
        mirror_path=f"data/her2st/images/{section}_{img}",
    )
    return counts, spots, image
