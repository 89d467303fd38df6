"""Package metadata comes from settings.ini (nbdev 2 convention); this file only reads it."""
from configparser import ConfigParser
import shlex
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

requirements = shlex.split(cfg.get('requirements', ''))
study_requirements = shlex.split(cfg.get('study_requirements', ''))
web_requirements = shlex.split(cfg.get('web_requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
console_scripts = [s.strip() for s in cfg.get('console_scripts', '').split('\n') if s.strip()]

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license='Apache-2.0',
    url=cfg['git_url'],
    classifiers=['Programming Language :: Python :: 3', 'Intended Audience :: Science/Research'],
    keywords=cfg['keywords'].split(),
    # The released model, models/covidnext.onnx (and its card, models/README.md), is installed as covidnext/models/.
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']) + [cfg['lib_path'] + '.models'],
    package_dir={cfg['lib_path'] + '.models': 'models'},
    package_data={cfg['lib_path'] + '.models': ['*.onnx', 'README.md']},
    include_package_data=True,
    python_requires='>=' + cfg['min_python'],
    install_requires=requirements,   # the light predictor: no torch
    extras_require={'study': study_requirements, 'web': web_requirements, 'dev': study_requirements + web_requirements + dev_requirements,
                    'lab': ['jupyterlab']},
    entry_points={'console_scripts': console_scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
